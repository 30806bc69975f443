// /demo/: any page of the app. The shell gives toasts, the bell and the connection
// indicator; this page adds the live list of the user's recent executions.

import { session, startShell, STATUS_LABELS } from "/static/demo/shell.js";

const auth = await session();
document.querySelector('[data-nav="home"]').classList.add("active");
if (auth) {
  const rt = startShell(auth);
  const list = document.getElementById("executions");
  const empty = document.getElementById("no-executions");
  const rows = new Map();

  rt.on("event", (event) => {
    if (event.event !== "execution.status" || !event.channel.startsWith("user:")) return;
    const data = event.data;
    let row = rows.get(data.execution_id);
    if (!row) {
      row = document.createElement("li");
      row.innerHTML = `<div class="grow"><a class="name"></a><div class="sub"></div></div>
        <div class="mini-bar"><span></span></div><span class="pill"></span>`;
      rows.set(data.execution_id, row);
    }
    list.prepend(row);
    empty.hidden = true;
    const name = row.querySelector(".name");
    name.textContent = `Execution ${data.execution_id}`;
    name.href = `/demo/executions/${encodeURIComponent(data.execution_id)}`;
    const step = data.step && (data.step.name || data.step.title);
    row.querySelector(".sub").textContent = [`team ${data.team_id}`, step, data.error && data.error.message]
      .filter(Boolean).join(" · ");
    row.querySelector(".mini-bar").dataset.status = data.status;
    row.querySelector(".mini-bar span").style.width = `${Math.max(0, Math.min(100, data.progress))}%`;
    const pill = row.querySelector(".pill");
    pill.dataset.status = data.status;
    pill.textContent = STATUS_LABELS[data.status] || data.status;
  });
}
