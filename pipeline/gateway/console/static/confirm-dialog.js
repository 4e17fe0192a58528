// A yes-or-no question in the page's <dialog> (index.html #confirm-dialog): modal, so the keyboard
// stays in it, Escape cancels, and it needs no window.confirm (which tests and some browsers block).

// The page's confirmation dialog (#confirm-dialog): resolves true if the person confirms.
export function confirmDialog(question, help, action = "Delete") {
  const dialog = document.getElementById("confirm-dialog");
  dialog.querySelector("[data-part=confirm-text]").textContent = question;
  dialog.querySelector("[data-part=confirm-help]").textContent = help;
  dialog.querySelector("[data-part=confirm-yes]").textContent = action;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}
