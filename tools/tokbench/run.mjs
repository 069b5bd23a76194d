// Runs the tokbench wasm32-wasip1 command under Node's V8 (Envoy's wasm engine).
//
//   cargo build --release -p tokbench --target wasm32-wasip1
//   node tools/tokbench/run.mjs target/wasm32-wasip1/release/tokbench.wasm [bytes]
//
// Also reports compile/instantiate time and the linear memory right after
// instantiation (the baked tables live in data segments, copied per instance).
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';
import process from 'node:process';

const path = process.argv[2] ?? 'target/wasm32-wasip1/release/tokbench.wasm';
const wasi = new WASI({ version: 'preview1', args: [path, ...process.argv.slice(3)], env: {}, returnOnExit: true });
const bytes = await readFile(path);
const t0 = performance.now();
const module = await WebAssembly.compile(bytes);
const t1 = performance.now();
// tollgate links proxy-wasm, whose host imports the bench never calls: stub them.
const imports = wasi.getImportObject();
for (const imp of WebAssembly.Module.imports(module)) {
  if (imp.kind !== 'function' || imports[imp.module]?.[imp.name]) continue;
  imports[imp.module] ??= {};
  imports[imp.module][imp.name] = () => { throw new Error(`host call ${imp.module}.${imp.name} in tokbench`); };
}
const instance = await WebAssembly.instantiate(module, imports);
const t2 = performance.now();
const mem = instance.exports.memory.buffer.byteLength;
console.log(`wasm ${(bytes.length / 1048576).toFixed(2)} MiB; compile ${(t1 - t0).toFixed(1)} ms; ` +
  `instantiate ${(t2 - t1).toFixed(1)} ms; memory after instantiate ${(mem / 1048576).toFixed(1)} MiB`);
// The filter crate also exports a reactor `_initialize`; run as a command.
const { memory, _start } = instance.exports;
const code = wasi.start({ exports: { memory, _start } });
process.exitCode = code;
