// k8s-validate.mjs: validates Kubernetes manifests against the Kubernetes API schemas.
//
//   node k8s-validate.mjs [--label NAME] FILE...     (FILE "-" reads stdin)
//
// Run from the directory where tests/deploy/package.json was installed (scripts/validate-deploy
// copies it there). Every YAML document must be a Kubernetes object whose apiVersion/kind is
// known to the pinned model packages:
//   - kubernetes-models (the Kubernetes OpenAPI schemas, compiled to ajv validators): required
//     fields, types, enums, formats (quantities, int-or-string, ...);
//   - the same packages' TypeScript types, compiled with tsc: every field name must exist in the
//     schema (ajv's generated validators accept unknown fields; tsc's excess-property check on an
//     object literal does not), so a typo such as readOnlyRootFileSystem fails;
//   - CRDs: ServiceMonitor and PrometheusRule (@kubernetes-models/prometheus-operator),
//     ExternalSecret and SecretStore (@kubernetes-models/external-secrets).
// Kustomization files are skipped here (scripts/validate-deploy renders them with kubectl).
// Prints one line per object and exits 1 when any object fails.
import { readFileSync, writeFileSync, mkdtempSync, rmSync, existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { execFileSync } from "node:child_process";
import { parseAllDocuments } from "yaml";

const args = process.argv.slice(2);
let label = null;
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--label") label = args[++i];
  else files.push(args[i]);
}

const here = process.cwd();
function modulePath(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  if (group === "monitoring.coreos.com")
    return `@kubernetes-models/prometheus-operator/${group}/${version}/${kind}`;
  if (group === "external-secrets.io")
    return `@kubernetes-models/external-secrets/${group}/${version}/${kind}`;
  return group ? `kubernetes-models/${group}/${version}/${kind}` : `kubernetes-models/${version}/${kind}`;
}

let failures = 0;
const objects = [];
for (const file of files) {
  const text = file === "-" ? readFileSync(0, "utf8") : readFileSync(file, "utf8");
  const name = label ?? file;
  const docs = parseAllDocuments(text);
  for (const [n, doc] of docs.entries()) {
    if (doc.errors.length) {
      console.log(`FAIL ${name} document ${n + 1}: YAML: ${doc.errors[0].message}`);
      failures++;
      continue;
    }
    const obj = doc.toJS();
    if (obj === null || obj === undefined) continue;
    const where = `${name}: ${obj.kind ?? "?"}/${obj.metadata?.name ?? "?"}`;
    if (typeof obj.apiVersion !== "string" || typeof obj.kind !== "string") {
      console.log(`FAIL ${where}: no apiVersion/kind`);
      failures++;
      continue;
    }
    if (obj.apiVersion.startsWith("kustomize.config.k8s.io/")) continue;
    const mod = modulePath(obj.apiVersion, obj.kind);
    let Model;
    try {
      const m = await import(`${mod}`);
      Model = m[obj.kind];
    } catch (e) {
      console.log(`FAIL ${where}: unknown apiVersion/kind ${obj.apiVersion} ${obj.kind} (${mod})`);
      failures++;
      continue;
    }
    try {
      new Model(obj).validate();
      objects.push({ where, obj, mod });
    } catch (e) {
      console.log(`FAIL ${where}: ${e.message}`);
      failures++;
    }
  }
}

// Unknown fields: one TypeScript file with every object as a typed literal.
if (objects.length) {
  const dir = mkdtempSync(join(here, ".tscheck-"));
  try {
    let src = "";
    const whereOf = [];
    objects.forEach(({ obj, mod }, i) => {
      src += `import type { I${obj.kind} as T${i} } from "${mod}";\n`;
    });
    objects.forEach(({ obj, where }, i) => {
      const start = src.split("\n").length;
      src += `export const o${i}: T${i} = ${JSON.stringify(obj, null, 1)};\n`;
      whereOf.push({ start, end: src.split("\n").length, where });
    });
    writeFileSync(join(dir, "objects.ts"), src);
    writeFileSync(join(dir, "tsconfig.json"), JSON.stringify({
      compilerOptions: { strict: true, noEmit: true, module: "nodenext", moduleResolution: "nodenext",
        target: "es2022", skipLibCheck: true, types: [] },
      files: ["objects.ts"],
    }));
    const tsc = join(here, "node_modules", "typescript", "bin", "tsc");
    let out = "";
    try {
      execFileSync(process.execPath, [tsc, "-p", dir], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
    } catch (e) {
      out = (e.stdout || "") + (e.stderr || "");
    }
    const bad = new Set();
    for (const line of out.split("\n")) {
      const m = line.match(/objects\.ts\((\d+),\d+\): error TS\d+: (.*)/);
      if (!m) continue;
      const ln = Number(m[1]);
      const o = whereOf.find((w) => ln >= w.start && ln < w.end);
      const key = o ? o.where : "?";
      console.log(`FAIL ${key}: ${m[2]}`);
      bad.add(key);
    }
    if (out && bad.size === 0) {
      console.log(`FAIL typescript check did not run cleanly:\n${out}`);
      failures++;
    }
    failures += bad.size;
    for (const { where } of objects) if (!bad.has(where)) console.log(`ok   ${where}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
if (failures) {
  console.log(`k8s-validate: ${failures} object(s) failed`);
  process.exit(1);
}
console.log(`k8s-validate: ${objects.length} object(s) valid`);
