// Moorage web interface: the little that is better with JavaScript. Every page works without.
"use strict";

// Search as you type: the repositories list is fetched again (the server renders it) a moment
// after the last keystroke; the URL follows, so the page can be bookmarked or reloaded.
function liveSearch(input) {
  const results = document.getElementById("results");
  let timer = null;
  let asked = 0;
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const term = input.value.trim();
      const query = new URLSearchParams(term ? { q: term } : {});
      const shown = input.dataset.live + (term ? "?" + query : "");
      query.set("fragment", "1");
      const mine = ++asked;
      const response = await fetch(input.dataset.live + "?" + query, { credentials: "same-origin" });
      if (!response.ok || mine !== asked) return;
      results.innerHTML = await response.text();
      history.replaceState(null, "", shown);
    }, 200);
  });
}

// Copy buttons: put the text of the element they name on the clipboard.
function copyButton(button) {
  button.addEventListener("click", async () => {
    const text = document.getElementById(button.dataset.copy).textContent;
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch (err) {
      button.textContent = "Select and copy";
    }
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("input[data-live]").forEach(liveSearch);
  document.querySelectorAll("button[data-copy]").forEach(copyButton);
});
