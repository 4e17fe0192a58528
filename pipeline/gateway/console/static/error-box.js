// A tab's error box. Messages pile up until it is cleared (at the tab's next action), so a
// refusal and the close that follows it both stay readable.

export function appendError(box, text) {
  if (box.hidden) box.replaceChildren();
  const line = document.createElement("p");
  line.textContent = text;
  box.append(line);
  box.hidden = false;
}

export function hideErrors(box) {
  box.hidden = true;
}
