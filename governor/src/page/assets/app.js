// The owner's page: reads /status.json every 5 s and fills the page in place (no reload).
"use strict";

const $ = (id) => document.getElementById(id);
const set = (id, text) => { $(id).textContent = text; };

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

function bytes(n) {
  if (n == null) return null;
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function ago(s) {
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min ago`;
}

function show(v) {
  document.title = `${v.phase} · ${v.name}`;
  set("name", v.name);
  set("device", v.deviceId ? `device ${v.deviceId}` : "no device id yet");
  set("version", v.version);
  set("system", v.system ? ` · system ${v.system.version} (slot ${v.system.slot})` : "");
  set("update", v.system ? [v.system.update, v.system.lastUpdate && `Last update: ${v.system.lastUpdate}`].filter(Boolean).join(" · ") : "");
  $("phase").dataset.phase = v.phase;
  set("phase", v.phase);
  set("meaning", v.meaning);
  set("led", v.led);
  set("ready", v.readySince ? `Ready for a renter since ${when(v.readySince)}.` : "");
  set("rental-ends", v.rental ? when(v.rental.ends) : "no rental in force");
  set("rental-left", v.rental ? v.rental.left : "–");
  set("rentals-done", String(v.rentalsCompleted));
  if (v.tunnel) {
    set("tunnel", v.tunnel.state + (v.tunnel.error ? `: ${v.tunnel.error}` : ""));
    set("sessions", String(v.tunnel.renterSessions));
  } else {
    set("tunnel", "not running (no rental listed)");
    set("sessions", "0");
  }
  const c = v.checkIns;
  set("check-in", c.secondsAgo != null ? `${ago(c.secondsAgo)}${c.lastError ? ` (failed: ${c.lastError})` : " (ok)"}` : "none yet");
  set("check-ins", `${c.ok} ok, ${c.failed} failed since the governor started`);
  set("storage-key", v.storage.key || "no volume open");
  const used = bytes(v.storage.usedBytes), free = bytes(v.storage.freeBytes);
  set("storage-space", used ? `${used} used, ${free} free` : "–");
  set("rules", v.networkRules || "–");
  set("checked-at", v.checkedAt ? `As of ${when(v.checkedAt)}:` : "running…");
  const list = $("checks");
  list.replaceChildren(...v.checks.map((l) => {
    const li = document.createElement("li");
    li.className = l.ok ? "ok" : "fail";
    li.append(`${l.item}: ${l.detail}`);
    if (l.fix) {
      const fix = document.createElement("span");
      fix.className = "fix";
      fix.textContent = `Fix: ${l.fix}`;
      li.append(fix);
    }
    return li;
  }));
  set("log", v.log.join("\n"));
  set("updated", `last at ${new Date(v.now).toLocaleTimeString()}`);
}

async function refresh() {
  try {
    const r = await fetch("/status.json", { cache: "no-store" });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    show(await r.json());
  } catch (e) {
    set("updated", `the device did not answer (${e.message}); trying again`);
  }
}

refresh();
setInterval(refresh, 5000);
