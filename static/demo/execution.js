// /demo/executions/<id>: the execution details page. Subscribing to execution:<id>
// delivers the latest state first, then every update live; after a reconnect the client
// resumes from the last id it saw, so nothing is missed or shown twice.

import { session, startShell, STATUS_LABELS } from "/static/demo/shell.js";

const id = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
const channel = `execution:${id}`;
document.body.dataset.channel = channel;
document.title = `Execution ${id} · Renum`;
document.getElementById("title").textContent = `Execution ${id}`;
const nav = document.querySelector('[data-nav="execution"]');
if (nav.getAttribute("href") === location.pathname) nav.classList.add("active");

const auth = await session(channel);
if (auth) {
  const rt = startShell(auth);
  const $ = (name) => document.getElementById(name);
  let updates = 0;

  rt.subscribe(channel, (event) => {
    if (event.event !== "execution.status") return;
    show(event.data, event.ts);
  }, { token: auth.grant });

  rt.on("error", (error) => {
    if (error.channel === channel) {
      $("waiting").textContent = `You cannot follow this execution: ${error.message}`;
    }
  });

  function show(data, ts) {
    updates += 1;
    $("waiting").hidden = true;
    $("team").textContent = `Team ${data.team_id}`;
    const status = $("status");
    status.dataset.status = data.status;
    status.textContent = STATUS_LABELS[data.status] || data.status;
    const progress = Math.max(0, Math.min(100, Number(data.progress) || 0));
    const bar = $("bar");
    bar.dataset.status = data.status;
    bar.setAttribute("aria-valuenow", String(progress));
    bar.querySelector("span").style.width = `${progress}%`;
    $("percent").textContent = `${Math.round(progress)}%`;
    $("step").textContent = stepText(data.step);
    $("updated").textContent = new Date(ts).toLocaleTimeString();
    $("count").textContent = String(updates);

    const failed = data.status === "failed";
    $("error").hidden = !failed;
    if (failed) {
      const error = data.error || {};
      $("error-message").textContent = `${error.message || "No message"}${error.code ? ` (${error.code})` : ""}`;
      $("error-details").textContent = error.details ? JSON.stringify(error.details, null, 2) : "";
      $("error-details").hidden = !error.details;
    }
    const done = $("done");
    done.hidden = !(data.status === "completed" || data.status === "cancelled");
    done.textContent = data.status === "completed" ? "Completed: every step finished." : "This execution was cancelled.";

    const item = document.createElement("li");
    item.innerHTML = `<time></time><span></span>`;
    item.querySelector("time").textContent = new Date(ts).toLocaleTimeString();
    item.querySelector("span").textContent = `${STATUS_LABELS[data.status] || data.status} · ${Math.round(progress)}%`
      + (data.step ? ` · ${stepText(data.step)}` : "");
    $("timeline").prepend(item);
    $("no-timeline").hidden = true;
  }
}

function stepText(step) {
  if (!step) return "–";
  const name = step.name || step.title || step.id || JSON.stringify(step);
  return step.index && step.total ? `${name} (${step.index} of ${step.total})` : name;
}
