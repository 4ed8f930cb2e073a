// One message per rejected form, next to the field it is about (decision 0041). The server names
// the field in X-Error-Field; a form that has a slot for it shows the message there, in place of
// its general error box. Earlier messages in the form are cleared on every answer.
document.addEventListener("htmx:beforeSwap", function (event) {
  var form = event.detail.elt && event.detail.elt.closest ? event.detail.elt.closest("form") : null;
  if (!form) return;
  form.querySelectorAll(".field-error").forEach(function (slot) { slot.textContent = ""; });
  form.querySelectorAll("[aria-invalid]").forEach(function (input) { input.removeAttribute("aria-invalid"); });
  var field = event.detail.xhr.getResponseHeader("X-Error-Field");
  if (!field || event.detail.xhr.status < 400) return;
  var slot = form.querySelector('[data-error-for="' + CSS.escape(field) + '"]');
  if (!slot) return;
  var box = form.querySelector(".form-error");
  if (box) box.textContent = "";
  event.detail.target = slot;
  var input = form.querySelector('[name="' + CSS.escape(field) + '"]');
  if (input) input.setAttribute("aria-invalid", "true");
});
