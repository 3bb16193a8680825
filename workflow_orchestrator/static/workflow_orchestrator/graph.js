/* EXECUTE's graph (drawn on the server, see diagrams.task_graph_svg): pointing at or focusing a
   task lights up every task it waits for and every task that waits for it, with the arrows
   between them, and dims the rest. A large workflow's page has the graph behind a disclosure:
   opening it fetches the graph from its own page. Listeners sit on the document, so a graph
   that live.js has put in place of the old one works the same. */
'use strict';
{
    // Every name reachable from `name` along the arrows, one way (`from` → `to`).
    function reach(edges, name, from, to) {
        const seen = new Set([name]);
        const queue = [name];
        while (queue.length) {
            const current = queue.pop();
            for (const edge of edges) {
                const next = edge.dataset[to];
                if (edge.dataset[from] === current && !seen.has(next)) {
                    seen.add(next);
                    queue.push(next);
                }
            }
        }
        return seen;
    }

    function clear(svg) {
        svg.classList.remove('tracing');
        svg.querySelectorAll('.traced, .traced-self').forEach((el) => el.classList.remove('traced', 'traced-self'));
    }

    function trace(node) {
        if (node.classList.contains('traced-self')) return; // still on the same task
        const svg = node.closest('svg.task-graph');
        const edges = Array.from(svg.querySelectorAll('path.dep-edge'));
        const name = node.dataset.task;
        const upstream = reach(edges, name, 'to', 'from');
        const downstream = reach(edges, name, 'from', 'to');
        clear(svg);
        svg.classList.add('tracing');
        svg.querySelectorAll('g.task-node').forEach((other) => {
            if (upstream.has(other.dataset.task) || downstream.has(other.dataset.task)) other.classList.add('traced');
        });
        node.classList.add('traced-self');
        edges.forEach((edge) => {
            const {from, to} = edge.dataset;
            if ((upstream.has(from) && upstream.has(to)) || (downstream.has(from) && downstream.has(to))) {
                edge.classList.add('traced');
            }
        });
    }

    function nodeOf(target) {
        const link = target instanceof Element && target.closest('svg.task-graph a, svg.task-graph g.task-node');
        return link ? (link.matches('g.task-node') ? link : link.querySelector('g.task-node')) : null;
    }

    function follow(event) {
        const node = nodeOf(event.target);
        if (node) trace(node);
        else document.querySelectorAll('svg.task-graph.tracing').forEach(clear);
    }

    document.addEventListener('mouseover', follow);
    document.addEventListener('focusin', follow);
    document.addEventListener('focusout', (event) => {
        if (!nodeOf(event.relatedTarget)) document.querySelectorAll('svg.task-graph.tracing').forEach(clear);
    });

    // `toggle` does not bubble: listen while it goes down to the <details>.
    document.addEventListener('toggle', async (event) => {
        const details = event.target;
        if (!(details instanceof HTMLDetailsElement) || !details.open || !details.dataset.graphSrc) return;
        const holder = details.querySelector('.full-graph-holder');
        try {
            const response = await fetch(details.dataset.graphSrc, {credentials: 'same-origin'});
            const doc = new DOMParser().parseFromString(await response.text(), 'text/html');
            const figure = doc.getElementById('execute-graph-full');
            if (!response.ok || !figure) throw new Error(String(response.status));
            figure.querySelector('figcaption').remove();
            const region = figure.querySelector('.graph-scroll');
            region.removeAttribute('aria-labelledby');
            region.setAttribute('aria-label', details.querySelector('summary').textContent.trim());
            holder.replaceChildren(...Array.from(figure.childNodes, (child) => document.importNode(child, true)));
        } catch (error) {
            const note = document.createElement('p');
            note.textContent = `The graph did not load (${error.message}): open it on its own page.`;
            holder.prepend(note);
        }
    }, true);
}
