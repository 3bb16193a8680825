/* Pages that update themselves: every few seconds, fetch this page again and put the fresh
   copies of the parts named in the live bar's data-targets (element ids) in place of the old
   ones. No full reload, nothing but fetch. The list of workflows keeps its ticked rows, and
   a workflow's page stops once the workflow has ended. */
'use strict';
{
    const PAUSED_KEY = 'orchestrator-live-paused';

    function ids(table) {
        return Array.from(table.querySelectorAll('tbody input.action-select'), (box) => box.value);
    }

    function rowsById(table) {
        const rows = new Map();
        table.querySelectorAll('tbody tr').forEach((row) => {
            const box = row.querySelector('input.action-select');
            if (box) rows.set(box.value, row);
        });
        return rows;
    }

    // Refresh a row's cells but not its checkbox, which the admin's actions script holds.
    function refreshRow(row, fresh) {
        row.className = fresh.className;
        Array.from(fresh.children).forEach((cell, index) => {
            const old = row.children[index];
            if (old && !old.querySelector('input.action-select')) old.replaceWith(document.importNode(cell, true));
        });
    }

    function restartActions() {
        // A fresh select-all box drops the listeners that knew the old rows' checkboxes.
        const toggle = document.getElementById('action-toggle');
        if (toggle) toggle.replaceWith(toggle.cloneNode(true));
        const boxes = document.querySelectorAll('tr input.action-select');
        if (window.Actions && boxes.length) window.Actions(boxes);
    }

    function refreshList(table, fresh, doc) {
        const ticked = table.querySelector('tbody input.action-select:checked');
        if (!ticked && ids(table).join() !== ids(fresh).join()) {
            table.tBodies[0].replaceWith(document.importNode(fresh.tBodies[0], true));
            const counter = document.querySelector('.action-counter');
            const freshCounter = doc.querySelector('.action-counter');
            if (counter && freshCounter) {
                counter.dataset.actionsIcnt = freshCounter.dataset.actionsIcnt;
                counter.textContent = freshCounter.textContent;
            }
            restartActions();
        } else {
            // Rows someone has ticked stay where they are; each row still shows its news.
            const rows = rowsById(table);
            rowsById(fresh).forEach((row, id) => rows.has(id) && refreshRow(rows.get(id), row));
        }
        const paginator = document.querySelector('.paginator');
        const freshPaginator = doc.querySelector('.paginator');
        if (paginator && freshPaginator) paginator.replaceWith(document.importNode(freshPaginator, true));
    }

    // A disclosure someone opened stays open in the fresh copy, showing what it showed until
    // its own script (graph.js, on `toggle`) brings its content up to date.
    function keepOpen(old, fresh) {
        old.querySelectorAll('details[id][open]').forEach((details) => {
            const copy = fresh.querySelector(`details[id="${details.id}"]`);
            if (!copy) return;
            const body = details.querySelector('summary ~ *');
            const freshBody = copy.querySelector('summary ~ *');
            if (body && freshBody) freshBody.replaceWith(body);
            copy.open = true;
        });
    }

    function refresh(id, doc) {
        const old = document.getElementById(id);
        const fresh = doc.getElementById(id);
        if (!old && !fresh) return true;
        if (!old || !fresh) return false; // the page's shape changed (a first row, say): reload it
        if (id === 'result_list') refreshList(old, fresh, doc);
        else {
            const copy = document.importNode(fresh, true);
            keepOpen(old, copy);
            old.replaceWith(copy);
        }
        return true;
    }

    function start(bar) {
        const interval = Number(bar.dataset.interval) || 3000;
        const targets = (bar.dataset.targets || '').split(',').filter(Boolean);
        const label = bar.querySelector('.live-label');
        const updated = bar.querySelector('.live-updated');
        const toggle = bar.querySelector('.live-toggle');
        let paused = sessionStorage.getItem(PAUSED_KEY) === '1';
        let stopped = bar.dataset.ended === '1';
        let timer = null;

        function show(state, text) {
            bar.dataset.state = state;
            label.textContent = text;
            if (toggle) {
                toggle.hidden = stopped;
                toggle.textContent = paused ? 'Resume' : 'Pause';
                toggle.setAttribute('aria-pressed', paused ? 'true' : 'false');
            }
        }

        function schedule() {
            clearTimeout(timer);
            if (!paused && !stopped) timer = setTimeout(poll, interval);
        }

        function stop(state, text) {
            stopped = true;
            clearTimeout(timer);
            show(state, text);
        }

        async function poll() {
            if (document.hidden) return; // visibilitychange starts polling again
            try {
                const response = await fetch(window.location.href, {
                    credentials: 'same-origin',
                    headers: {'X-Orchestrator-Live': '1'},
                });
                const doc = new DOMParser().parseFromString(await response.text(), 'text/html');
                const freshBar = doc.getElementById('live-bar');
                if (!response.ok || !freshBar) {
                    // Signed out, the workflow deleted, or the server refusing: say so and stop.
                    stop('stopped', `Stopped (${response.ok ? 'signed out?' : response.status}): reload the page`);
                    return;
                }
                if (paused || stopped) return;
                if (!targets.every((id) => refresh(id, doc))) {
                    window.location.reload();
                    return;
                }
                document.title = doc.title;
                // The server's time of the fresh page, as the console shows times (with its zone).
                updated.textContent = `updated ${freshBar.dataset.rendered}`;
                if (freshBar.dataset.ended === '1') {
                    stop('ended', freshBar.querySelector('.live-label').textContent.trim());
                    return;
                }
                show('live', 'Live');
            } catch (error) {
                show('error', 'Live: no answer, trying again');
            }
            schedule();
        }

        if (toggle) {
            toggle.addEventListener('click', () => {
                paused = !paused;
                sessionStorage.setItem(PAUSED_KEY, paused ? '1' : '0');
                show(paused ? 'paused' : 'live', paused ? 'Paused' : 'Live');
                if (!paused) poll();
                else clearTimeout(timer);
            });
        }
        document.addEventListener('visibilitychange', () => {
            if (!document.hidden && !paused && !stopped) poll();
        });
        if (stopped) return;
        show(paused ? 'paused' : 'live', paused ? 'Paused' : 'Live');
        schedule();
    }

    const bar = document.getElementById('live-bar');
    if (bar) start(bar);
}
