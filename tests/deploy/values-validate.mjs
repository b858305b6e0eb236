// values-validate.mjs: validates Helm values against a chart's values.schema.json with ajv
// (draft-07, all errors, formats), independently of Helm's own check.
//   node values-validate.mjs SCHEMA.json VALUES.yaml [OVERRIDE.yaml...]
// VALUES.yaml (the chart's values.yaml) is validated alone, then each OVERRIDE merged over it
// the way Helm merges -f files (maps deep-merged, everything else replaced).
// Run from the directory where tests/deploy/package.json was installed.
import { readFileSync } from "node:fs";
import { parse } from "yaml";
import Ajv from "ajv";
import addFormats from "ajv-formats";

const [schemaFile, baseFile, ...overrides] = process.argv.slice(2);
const ajv = new Ajv({ allErrors: true, strict: true, allowUnionTypes: true });
addFormats(ajv);
const validate = ajv.compile(JSON.parse(readFileSync(schemaFile, "utf8")));
const load = (f) => parse(readFileSync(f, "utf8")) ?? {};
const isMap = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
function merge(base, over) {
  const out = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = isMap(v) && isMap(base[k]) ? merge(base[k], v) : v;
  return out;
}
const base = load(baseFile);
let failures = 0;
for (const [name, values] of [[baseFile, base], ...overrides.map((f) => [`${baseFile} + ${f}`, merge(base, load(f))])]) {
  if (validate(values)) {
    console.log(`ok   ${name}`);
  } else {
    failures++;
    for (const e of validate.errors)
      console.log(`FAIL ${name}: ${e.instancePath || "/"} ${e.message} ${JSON.stringify(e.params)}`);
  }
}
process.exit(failures ? 1 : 0);
