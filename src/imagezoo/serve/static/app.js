// The upload page: each chosen or dropped photo is posted to api/classify on its own and its
// top classes are drawn as bars. Text from the server and file names go in with textContent,
// never as HTML.
"use strict";

const results = document.getElementById("results");
const statusLine = document.getElementById("status");
const template = document.getElementById("result-template");

async function describeModel() {
  const line = document.getElementById("model");
  try {
    const response = await fetch("api/model");
    const model = await response.json();
    const engine = model.backend + " " + model.numerics + " (" + model.precision + ")";
    line.textContent = model.name + " \u00b7 " + model.classes + " classes \u00b7 " +
      model.input_size + "\u00d7" + model.input_size + " input \u00b7 engine " + engine;
  } catch (error) {
    line.textContent = "The server does not answer: " + error;
  }
}

function percent(probability) {
  return (probability * 100).toFixed(2) + "%";
}

function drawPredictions(list, predictions) {
  for (const prediction of predictions) {
    const item = document.createElement("li");
    item.className = "prediction";
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = prediction.label;
    const value = document.createElement("span");
    value.className = "probability";
    value.textContent = percent(prediction.probability);
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = percent(prediction.probability);
    bar.appendChild(fill);
    item.append(label, value, bar);
    list.appendChild(item);
  }
}

async function classify(file) {
  const card = template.content.firstElementChild.cloneNode(true);
  const thumbnail = card.querySelector(".thumbnail");
  thumbnail.addEventListener("error", () => { thumbnail.style.visibility = "hidden"; });
  thumbnail.src = URL.createObjectURL(file);
  thumbnail.alt = file.name;
  card.querySelector(".name").textContent = file.name;
  const note = card.querySelector(".note");
  note.textContent = "classifying\u2026";
  results.prepend(card);

  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const response = await fetch("api/classify", { method: "POST", body: form });
    const answer = await response.json();
    if (!response.ok) {
      throw new Error(typeof answer.detail === "string" ? answer.detail : response.statusText);
    }
    note.textContent = "classified in " + answer.milliseconds + " ms";
    drawPredictions(card.querySelector(".predictions"), answer.predictions);
    card.classList.add("done");
  } catch (error) {
    note.textContent = "";
    const message = card.querySelector(".error");
    message.textContent = error.message;
    message.hidden = false;
    card.classList.add("failed");
  }
}

async function classifyAll(files) {
  const images = Array.from(files);
  statusLine.textContent = "Classifying " + images.length + " photo(s)\u2026";
  for (const file of images) {
    await classify(file);  // one at a time: the server runs one forward pass at a time anyway
  }
  statusLine.textContent = "";
}

const input = document.getElementById("file");
input.addEventListener("change", () => {
  classifyAll(input.files);
  input.value = "";
});

const drop = document.getElementById("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  classifyAll(event.dataTransfer.files);
});

describeModel();
