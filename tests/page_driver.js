// Runs the <script> of dlc serve's page (tests/test_serve_page.py) against a minimal DOM:
// the page's own fields filled with values, fetch resolving "predict" against the server's
// address as a browser does. Prints what the page shows after each form is submitted.
// argv: script file, server base URL, JSON [{name, value, dataset}], CSV text
const fs = require("fs");
const [scriptFile, base, fieldsJson, csv] = process.argv.slice(2);
const out = {className: "", textContent: "(nothing yet)"};
const handlers = {};
const forms = {
  row: {elements: JSON.parse(fieldsJson)},
  csv: {elements: {file: {files: [{text: async () => csv}]}}},
};
for (const [id, form] of Object.entries(forms)) {
  form.addEventListener = (type, handler) => { handlers[id] = handler; };
}
globalThis.document = {getElementById: id => (id === "out" ? out : forms[id])};
const sent = [];
const realFetch = globalThis.fetch;
globalThis.fetch = (url, options) => {
  sent.push({url: String(url), type: options.headers["Content-Type"]});
  return realFetch(new URL(url, base), options);
};
eval(fs.readFileSync(scriptFile, "utf8"));

async function submit(id) {
  out.textContent = "(waiting)";
  await handlers[id]({preventDefault() {}, target: forms[id]});
  for (let i = 0; i < 200 && out.textContent === "(waiting)"; i++) {
    await new Promise(resolve => setTimeout(resolve, 50));
  }
  return {shown: out.textContent, className: out.className};
}

(async () => {
  const row = await submit("row");
  const upload = await submit("csv");
  console.log(JSON.stringify({row, upload, sent}));
})();
