// Builds a wasi:http component (world wasi:http/proxy) from a fetch-event
// handler with componentize-js. A copy of this file is run from the folder
// where @bytecodealliance/componentize-js is installed (ES modules resolve
// packages from the script's own folder; bench/peers/wasmtime_serve.py does so):
//   node componentize.mjs SOURCE.js OUT.wasm
// The WIT packages are the wasi 0.2.12 ones that ship inside jco (a
// dependency of componentize-js), relabelled 0.2.10, the version the
// StarlingMonkey engine of componentize-js 0.23.0 exports: the proxy world's
// interfaces are the same across 0.2.x patch releases, and nothing else has
// to be fetched.
import { mkdtemp, mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { componentize } from "@bytecodealliance/componentize-js";

const SHIPPED = "0.2.12";
const WASI = "0.2.10";
const [sourcePath, out] = process.argv.slice(2);
const here = dirname(fileURLToPath(import.meta.url));
const builtin = join(here, "node_modules", "@bytecodealliance", "jco", "lib", "wit", "builtin", SHIPPED);

const wit = await mkdtemp(join(tmpdir(), "echo-wit-"));
try {
  await mkdir(join(wit, "deps"));
  for (const name of ["cli", "clocks", "filesystem", "http", "io", "random", "sockets"]) {
    const text = await readFile(join(builtin, `wasi-${name}`, "package.wit"), "utf8");
    await writeFile(join(wit, "deps", `${name}.wit`), text.replaceAll(`@${SHIPPED}`, `@${WASI}`));
  }
  await writeFile(
    join(wit, "world.wit"),
    `package local:bench;\n\nworld echo {\n  include wasi:http/proxy@${WASI};\n}\n`,
  );
  const { component } = await componentize({ sourcePath, witPath: wit, worldName: "echo" });
  await writeFile(out, component);
  console.log(`componentized ${sourcePath} -> ${out} (${component.length} bytes)`);
} finally {
  await rm(wit, { recursive: true, force: true });
}
