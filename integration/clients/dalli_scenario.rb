# dalli (Debian's ruby-dalli 3.0.6, memcache binary protocol), unmodified, through its normal API
# against mqd: prints one JSON object of what each step saw; integration/test_binary_meta_clients.py
# checks it. Usage: ruby dalli_scenario.rb PORT
require "dalli"
require "json"

port = Integer(ARGV.fetch(0))
server = "127.0.0.1:#{port}"
dc = Dalli::Client.new(server, socket_timeout: 10)
out = {}

out["version"] = Dalli::VERSION
# FIFO, an empty queue is a miss.
%w[one two three].each { |m| dc.set("fifo", m, 0, raw: true) }
out["fifo"] = Array.new(4) { dc.get("fifo") }
# Flags kept: dalli marks a marshalled object with flag 1 and a raw string with 0.
dc.set("typed", { "id" => 7, "tags" => ["a"] })
dc.set("typed", "plain", 0, raw: true)
out["typed"] = [dc.get("typed"), dc.get("typed")]
# Multi-get (GETKQ ... NOOP): one message from each queue that has one.
dc.set("ma", "a1", 0, raw: true)
dc.set("ma", "a2", 0, raw: true)
dc.set("mb", "b1", 0, raw: true)
out["multi"] = [dc.get_multi("ma", "mb", "mc"), dc.get_multi("ma", "mb")]
# A message set over text before this script ran, with flags 0.
out["from_text"] = dc.get("from_text")
# add is refused (the queue name exists), delete removes a queue.
out["add"] = dc.add("fifo", "x")
dc.set("gone", "x", 0, raw: true)
out["delete"] = [dc.delete("gone"), dc.get("gone")]
# Reliable reads.
%w[j1 j2].each { |m| dc.set("work", m, 0, raw: true) }
out["reliable"] = %w[work/open work/abort work/open work/close/open work/close work].map { |k| dc.get(k) }
# Blocking reads: a timeout is a miss; a set from another client wakes a waiting get.
t = Time.now
out["timeout_miss"] = dc.get("none/t=500")
out["timeout_s"] = Time.now - t
producer = Thread.new do
  sleep 0.3
  Dalli::Client.new(server).set("wake", "woken", 0, raw: true)
end
t = Time.now
out["woken"] = dc.get("wake/t=5000")
out["woken_s"] = Time.now - t
producer.join
# Left for the test to read over text, with dalli's flag for a marshalled object.
dc.set("to_text", [1, 2])
out["stats_curr_items"] = dc.stats.values.first["curr_items"]
dc.close
puts JSON.generate(out)
