// Keyboard access to what scrolls sideways (WCAG 2.1.1): a table wider than a phone's screen
// scrolls inside its box, which a keyboard user can only scroll once the box takes the focus.
// Each box that scrolls now becomes a named region in the tab order (arrow keys scroll it); one
// that no longer scrolls (the window grew) leaves it again. Linked from admin/base_site.html and
// the browsable API's page, so a new page's tables need nothing of their own.
(function () {
  "use strict";
  var MARK = "data-scroll-region";

  function scrolls(box) {
    if (box.scrollWidth <= box.clientWidth + 1 && box.scrollHeight <= box.clientHeight + 1) return false;
    var style = getComputedStyle(box);
    return /(auto|scroll)/.test(style.overflowX + " " + style.overflowY);
  }

  function name(box) {
    var heading = box.querySelector("h2, h3, caption, legend");
    var text = heading ? heading.textContent.replace(/\s+/g, " ").trim() : "";
    return (text || "Content") + " (scrolls)";
  }

  function mark() {
    var boxes = document.querySelectorAll("#content div, #content section, #content pre, .content-main pre, .content-main div");
    for (var i = 0; i < boxes.length; i++) {
      var box = boxes[i];
      var marked = box.hasAttribute(MARK);
      if (scrolls(box)) {
        if (marked || box.hasAttribute("tabindex")) continue;
        box.setAttribute(MARK, "");
        box.setAttribute("tabindex", "0");
        if (!box.hasAttribute("role")) box.setAttribute("role", "region");
        if (!box.hasAttribute("aria-label") && !box.hasAttribute("aria-labelledby")) box.setAttribute("aria-label", name(box));
      } else if (marked) {
        box.removeAttribute(MARK);
        box.removeAttribute("tabindex");
        if (box.getAttribute("role") === "region") box.removeAttribute("role");
        if (/ \(scrolls\)$/.test(box.getAttribute("aria-label") || "")) box.removeAttribute("aria-label");
      }
    }
  }

  var pending = null;
  function later() {
    if (pending) return;
    pending = window.requestAnimationFrame(function () { pending = null; mark(); });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", mark);
  else mark();
  window.addEventListener("load", mark);
  window.addEventListener("resize", later);
  // Parts of the page that refresh themselves (live.js) come back as new boxes.
  if (window.MutationObserver) new MutationObserver(later).observe(document.body, {childList: true, subtree: true});
})();
