// memjs (Node, memcache binary protocol), unmodified, through its normal API against mqd: prints
// one JSON object of what each step saw; integration/test_binary_meta_clients.py checks it.
// Usage: node memjs_scenario.js PORT   (memjs found through NODE_PATH)
const memjs = require("memjs");

const server = `127.0.0.1:${process.argv[2]}`;
// Flags through memjs's own extension point, a serializer: 1 marks JSON, 0 a plain string.
const serializer = {
  serialize(opcode, value, extras) {
    const json = typeof value !== "string";
    extras.writeUInt32BE(json ? 1 : 0, 0);
    return { value: json ? JSON.stringify(value) : value, extras };
  },
  deserialize(opcode, value, extras) {
    const flags = extras && extras.length >= 4 ? extras.readUInt32BE(0) : 0;
    return { value: flags === 1 ? JSON.parse(value.toString()) : value.toString(), extras: flags };
  },
};
const options = { timeout: 10, retries: 0, serializer };
const mc = memjs.Client.create(server, options);
const get = async (key) => (await mc.get(key)).value;

(async () => {
  const out = {};
  out.version = require("memjs/package.json").version;
  for (const m of ["one", "two", "three"]) await mc.set("fifo", m, {});
  out.fifo = [await get("fifo"), await get("fifo"), await get("fifo"), await get("fifo")];
  await mc.set("typed", { id: 7, tags: ["a"] }, {});
  await mc.set("typed", "plain", {});
  const typed = [await mc.get("typed"), await mc.get("typed")];
  out.typed = typed.map((r) => r.value);
  out.typed_flags = typed.map((r) => r.flags);
  out.from_text = await get("from_text");
  out.add = await mc.add("fifo", "x", {});
  await mc.set("gone", "x", {});
  out.delete = [await mc.delete("gone"), await get("gone")];
  for (const m of ["j1", "j2"]) await mc.set("work", m, {});
  out.reliable = [];
  for (const k of ["work/open", "work/abort", "work/open", "work/close/open", "work/close", "work"]) {
    out.reliable.push(await get(k));
  }
  let t = Date.now();
  out.timeout_miss = await get("none/t=500");
  out.timeout_s = (Date.now() - t) / 1000;
  const producer = memjs.Client.create(server, options);
  setTimeout(() => producer.set("wake", "woken", {}), 300);
  t = Date.now();
  out.woken = await get("wake/t=5000");
  out.woken_s = (Date.now() - t) / 1000;
  producer.close();
  await mc.set("to_text", [1, 2], {});
  out.stats_curr_items = await new Promise((resolve, reject) =>
    mc.stats((err, _server, stats) => (err ? reject(err) : resolve(stats.curr_items))));
  mc.quit();
  console.log(JSON.stringify(out));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
