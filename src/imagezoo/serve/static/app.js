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
    const model = await readAnswer(await fetch("api/model"));
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

// The server answers JSON; a proxy in front of it may answer an HTML error page instead.
async function readAnswer(response) {
  const type = response.headers.get("content-type") || "";
  const answer = type.includes("application/json") ? await response.json() : {};
  if (!response.ok) {
    const detail = typeof answer.detail === "string" ? answer.detail
      : (response.status + " " + response.statusText).trim();
    throw new Error(detail);
  }
  return answer;
}

function newCard(file) {
  const card = template.content.firstElementChild.cloneNode(true);
  const thumbnail = card.querySelector(".thumbnail");
  const address = URL.createObjectURL(file);
  const release = () => URL.revokeObjectURL(address);
  thumbnail.addEventListener("load", release);
  thumbnail.addEventListener("error", () => { release(); thumbnail.style.visibility = "hidden"; });
  thumbnail.src = address;
  thumbnail.alt = file.name;
  card.querySelector(".name").textContent = file.name;
  card.querySelector(".note").textContent = "waiting\u2026";
  return card;
}

async function classify(file, card) {
  const note = card.querySelector(".note");
  note.textContent = "classifying\u2026";
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const response = await fetch("api/classify", { method: "POST", body: form });
    const answer = await readAnswer(response);
    note.textContent = "classified in " + answer.milliseconds + " ms";
    drawPredictions(card.querySelector(".predictions"), answer.predictions);
    offerHeatMap(file, card);
    card.classList.add("done");
  } catch (error) {
    note.textContent = "";
    const message = card.querySelector(".error");
    message.textContent = error.message;
    message.hidden = false;
    card.classList.add("failed");
  }
}

// On request, the Grad-CAM heat map of the top class (api/explain draws it as a PNG).
function offerHeatMap(file, card) {
  const button = card.querySelector(".explain");
  button.hidden = false;
  button.addEventListener("click", async () => {
    button.disabled = true;
    button.textContent = "drawing the heat map\u2026";
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      const response = await fetch("api/explain", { method: "POST", body: form });
      if (!response.ok) {
        await readAnswer(response);  // throws with the server's message
      }
      const picture = card.querySelector(".heatmap");
      const address = URL.createObjectURL(await response.blob());
      picture.addEventListener("load", () => URL.revokeObjectURL(address), { once: true });
      picture.src = address;
      picture.alt = "heat map of " + file.name;
      picture.hidden = false;
      button.hidden = true;
    } catch (error) {
      button.textContent = "no heat map: " + error.message;
    }
  }, { once: true });
}

async function classifyAll(files) {
  const images = Array.from(files);
  const cards = images.map(newCard);
  const batch = document.createDocumentFragment();
  batch.append(...cards);
  results.prepend(batch);  // the newest choice on top, its photos in the order chosen
  statusLine.textContent = "Classifying " + images.length + " photo(s)\u2026";
  for (let i = 0; i < images.length; i++) {
    await classify(images[i], cards[i]);  // one at a time: the server runs one pass at a time
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

// A photo dropped beside the drop zone must not make the browser navigate away to it.
for (const kind of ["dragover", "drop"]) {
  window.addEventListener(kind, (event) => event.preventDefault());
}

describeModel();
