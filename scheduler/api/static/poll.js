// Repeat an async task `intervalMs` (a number, or a function giving it) after the previous
// run ended (never overlapping), skipping ticks while the tab is hidden. Returns the
// function that stops it.

export function poll(task, intervalMs) {
  let stopped = false;
  let timer = null;
  async function tick() {
    if (stopped) return;
    if (!document.hidden) {
      try {
        await task();
      } catch {
        // the task shows its own errors; a 401 has already left the page
      }
    }
    const wait = typeof intervalMs === "function" ? intervalMs() : intervalMs;
    if (!stopped) timer = setTimeout(tick, wait);
  }
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
