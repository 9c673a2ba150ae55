"""The data-flow diagram: node and edge counts derived by hand, SVG/PNG/PDF/dot output."""
from __future__ import annotations

import hashlib
import re
import shutil
import xml.etree.ElementTree as ElementTree

import pytest
import torch
from PIL import Image
from torch import nn

import imagezoo
from imagezoo.errors import ImagezooError
from imagezoo.viz import graph as graph_module
from imagezoo.viz.graph import network_graph, write_graph

needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's dot is not installed (apt-get install graphviz)")


@pytest.fixture(scope="module")
def resnet18():
    return imagezoo.load_model("resnet18", weights="random")


def counts(graph) -> tuple[int, int, int]:
    """(nodes, edges, dashed edges) of a Digraph's dot source."""
    lines = graph.source.splitlines()
    edges = [line for line in lines if " -> " in line]
    nodes = [line for line in lines if re.match(r'\s+("[^"]+"|\w+) \[label=', line)]
    return len(nodes), len(edges), sum("dashed" in line for line in edges)


# ResNet-18 by hand. Stem: input, conv1, bn1, relu, maxpool (5 nodes, 4 edges). Head: avgpool,
# flatten, fc (3 nodes; 3 edges from the last block's output on). 8 basic blocks, 3 of them
# (layer2.0, layer3.0, layer4.0) with a projection shortcut (downsample.0 conv, .1 batch norm).
#
# Every layer (depth None): a block is conv1, bn1, relu, conv2, bn2, add, relu = 7 nodes and
# 8 edges (its input -> conv1, 4 along the branch, bn2 -> add, shortcut -> add, add -> relu);
# a projection adds 2 nodes and 2 edges (input -> ds.0 -> ds.1 -> add instead of input -> add).
#   nodes 5 + 3 + 8*7 + 3*2 = 70; edges 4 + 3 + 8*8 + 3*2 = 77.
#   dashed (the shortcut path): 1 per identity block, 3 per projection: 5*1 + 3*3 = 14.
# depth 3 (the projection is one node): 70 - 3 = 67 nodes, 77 - 3 = 74 edges, dashed 5 + 3*2 = 11.
# depth 2 (blocks): 5 + 8 + 3 = 16 nodes in a chain, 15 edges; depth 1 (stages): 12 and 11.
@pytest.mark.parametrize("depth, expected", [
    (None, (70, 77, 14)), (3, (67, 74, 11)), (2, (16, 15, 0)), (1, (12, 11, 0))])
def test_resnet18_nodes_and_edges(resnet18, depth, expected):
    assert counts(network_graph(resnet18, depth=depth)) == expected


def test_labels_show_type_and_output_shape(resnet18):
    source = network_graph(resnet18, depth=3).source
    assert 'label="conv1\nConv2d 7x7 /2\n64 x 112 x 112"' in source
    assert 'label="layer2.0.downsample\nConv2d 1x1 /2 + BatchNorm2d\n128 x 28 x 28"' in source
    assert 'label="add\n512 x 7 x 7"' in source
    assert 'label="fc\nLinear\n1000"' in source
    assert 'label="input\nimage\n3 x 224 x 224"' in source
    stages = network_graph(resnet18, depth=1).source
    assert 'label="layer3\n2 x BasicBlock\n256 x 14 x 14"' in stages
    # Boxes: stages around blocks around their layers.
    assert 'subgraph "cluster_layer2.0"' in source and "subgraph cluster_layer2 {" in source


def test_caffe_names_and_efficientnet_collapsed(resnet18):
    caffe = network_graph(imagezoo.load_model("resnet50", weights="random"), depth=2,
                          names="caffe").source
    assert 'label="res4f\nBottleneck\n1024 x 14 x 14"' in caffe
    assert 'label="fc1000\nLinear\n1000"' in caffe
    lite = network_graph(imagezoo.load_model("efficientnet_lite0"), depth=1)
    # input, _conv_stem, _bn0, relu6, _blocks (all 16 as one), _conv_head, _bn1, relu6,
    # _avg_pooling, flatten, _dropout, _fc: a chain of 12.
    assert counts(lite) == (12, 11, 0)
    assert 'label="_blocks\n16 x MBConvBlock\n320 x 7 x 7"' in lite.source


@needs_dot
def test_svg_is_valid_xml_with_every_node(tmp_path, resnet18):
    out = write_graph(resnet18, tmp_path / "net.svg")
    root = ElementTree.parse(out).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    groups = [g.get("class") for g in root.iter("{http://www.w3.org/2000/svg}g")]
    assert groups.count("node") == 70 and groups.count("edge") == 77
    assert groups.count("cluster") == 4 + 8 + 3   # stages, blocks, projections


@needs_dot
def test_png_and_pdf_are_reproducible(tmp_path, resnet18):
    for kind in ("png", "pdf"):
        first = write_graph(resnet18, tmp_path / f"a.{kind}", depth=2)
        second = write_graph(resnet18, tmp_path / f"b.{kind}", depth=2)
        assert hashlib.sha256(first.read_bytes()).digest() == \
            hashlib.sha256(second.read_bytes()).digest()
    with Image.open(tmp_path / "a.png") as picture:
        picture.load()
        assert picture.width > 200 and picture.height > picture.width
    pdf = (tmp_path / "a.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and b"/CreationDate (D:19700101000000" in pdf


def test_dot_source_is_written_without_dot_and_other_formats_say_how(tmp_path, monkeypatch,
                                                                    resnet18):
    monkeypatch.setattr(graph_module.shutil, "which", lambda name: None)
    out = write_graph(resnet18, tmp_path / "net.dot", depth=2)
    text = out.read_text()
    assert text.startswith("digraph resnet18 {") and text.count(" -> ") == 15
    with pytest.raises(ImagezooError) as caught:
        write_graph(resnet18, tmp_path / "net.svg")
    message = str(caught.value)
    assert "dot -Tsvg net.dot -o net.svg" in message and "apt-get install graphviz" in message
    assert not (tmp_path / "net.svg").exists()


def test_bad_requests(tmp_path, resnet18):
    with pytest.raises(ImagezooError, match=r"\.svg, \.png, \.pdf or \.dot"):
        write_graph(resnet18, tmp_path / "net.jpg")
    with pytest.raises(ImagezooError, match="torch, caffe, paddle"):
        network_graph(resnet18, names="onnx")

    class DataDependent(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(ImagezooError, match="cannot trace"):
        network_graph(DataDependent())


def test_tracing_leaves_the_model_in_its_mode(resnet18):
    resnet18.train()
    before = resnet18.bn1.running_var.clone()
    network_graph(resnet18, depth=1)
    assert resnet18.training and torch.equal(resnet18.bn1.running_var, before)
    resnet18.eval()
