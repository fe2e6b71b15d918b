"""The run form's controls in Gradio: one per generated field of `app.views.advanced` (the run
settings, and the chosen host's and boosters' options), the value each control holds, and the
form kept in the browser across reloads."""

from __future__ import annotations

import json
from typing import Any, Callable

import gradio as gr

from app.views import advanced
from specpl.methods import BOOSTERS, HOSTS


def shown_value(field: advanced.OptionField, value: Any) -> Any:
    """A config value as its generated control holds it (JSON as text, no value as an empty box)."""
    if field.kind == "json":
        return json.dumps(value)
    if value is None and field.kind in ("str", "choice"):
        return ""
    if field.kind in ("int", "float") and isinstance(value, str):
        return None  # "auto" (epochs, batch size derived from the data): an empty number box
    return value


def option_control(field: advanced.OptionField, value: Any, default: Any) -> gr.components.Component:
    """One control for a generated field, labelled with its key (as ``--option`` takes it) and its
    default. A number the library derives when it is unset reads "auto" while empty.

    Gradio's number box turns no value into 0 as it is drawn; `keep_unset_numbers` sets it back for
    the run settings, which the API takes as numbers. Method options are drawn anew with every
    method choice (`draw_method_options`), beyond its reach, so an option that may have no value is
    a text box (`advanced.coerce` reads the number)."""
    common = {
        "interactive": True,
        "label": field.key,
        "info": f"default: {default!r}",
        "elem_id": "opt-" + field.key.replace(".", "-").replace("_", "-"),
    }
    shown = shown_value(field, value)
    numeric = field.kind in ("int", "float")
    placeholder = "auto" if numeric and shown_value(field, default) is None else None
    if field.kind == "bool":
        return gr.Checkbox(bool(shown), **common)
    if numeric and not (field.is_option and field.nullable):
        return gr.Number(shown, precision=0 if field.kind == "int" else None, placeholder=placeholder, **common)
    if field.kind == "choice":
        return gr.Dropdown(list(field.choices), value=shown or None, **common)
    return gr.Textbox(shown, placeholder=placeholder, **common)


def keep_unset_numbers(opened: Callable, show: Callable[[], Any], controls: list[gr.components.Component]) -> None:
    """Keep the number boxes among `controls` that have no value empty ("auto") when they first
    appear: Gradio's box sets a missing value to 0 as it is drawn, shown and sent with the form (so a
    run got ``batch_size=0`` once the Advanced form was opened). When `opened` fires (the accordion's
    expand) the browser notes their values; `show` wires the event that shows them, after that note
    (Gradio runs a trigger's events in the order they were wired), and after it the values are set
    again."""
    numbers = [control for control in controls if isinstance(control, gr.Number)]
    before = gr.JSON(visible=False)
    opened(None, numbers, before, js="(...values) => [values]", show_progress="hidden", api_visibility="private")
    show().then(None, before, numbers, js="(values) => values", show_progress="hidden", api_visibility="private")


def setting_controls(host: str, boosters: list[str]) -> list[gr.components.Component]:
    """The run settings' controls (training, decomposer, data, template), a group per section,
    each starting at the value it means for the default method (`advanced.effective_values`)."""
    values = advanced.effective_values(host, boosters, "default")
    controls = []
    for section in [*(name for name, _ in advanced.SECTIONS), "run"]:
        with gr.Group():
            gr.Markdown(f"**{section}** settings")
            controls += [
                option_control(field, values.get(field.key), values.get(field.key))
                for field in advanced.setting_fields()
                if field.owner == section
            ]
    return controls


def draw_method_options(
    host: gr.Dropdown, boosters: gr.CheckboxGroup, preset: gr.Dropdown, chosen: gr.JSON, triggers: list
) -> None:
    """Draw a group of controls for the chosen host and each chosen booster, generated from its
    config dataclass, when the accordion opens and when the choice changes. Only the chosen
    components are drawn: a control for every registered option made the first page load slower.
    An edit is written into `chosen` in the browser, at once, so Start never reads a stale value."""

    @gr.render(inputs=[host, boosters, preset, chosen], triggers=triggers)
    def draw(host_name: str, booster_names: list[str] | None, preset_name: str, overrides: dict | None) -> None:
        if host_name not in HOSTS:
            return
        names = [host_name, *(name for name in booster_names or [] if name in BOOSTERS)]
        effective = advanced.effective_values(host_name, names[1:], preset_name or "default")
        for name in names:
            component = HOSTS.get(name) if name == host_name else BOOSTERS.get(name)
            with gr.Group():
                gr.Markdown(f"**{name}** options — {component.description}")
                for field in advanced.option_fields(name):
                    value = (overrides or {}).get(field.key, effective.get(field.key))
                    control = option_control(field, value, effective.get(field.key))
                    control.change(
                        None,
                        [chosen, control],
                        chosen,
                        js=f"(chosen, value) => ({{...(chosen || {{}}), {json.dumps(field.key)}: value}})",
                        show_progress="hidden",
                        api_visibility="private",
                    )


def remember_form(demo: gr.Blocks, form: dict[str, gr.components.Component], saved: gr.BrowserState) -> None:
    """Keep the form's values in the browser (any change is saved) and put them back on page load;
    a stored value the form no longer offers (a removed method) is left at its default."""
    keys, components = list(form), list(form.values())
    gr.on(
        [c.change for c in components],
        lambda *values: dict(zip(keys, values, strict=True)),
        components,
        saved,
        show_progress="hidden",
        api_visibility="private",
    )

    def restore(values: dict | None) -> list[Any]:
        values = values if isinstance(values, dict) else {}
        if "method.preset" in values:  # a form saved before the rename says "reference" for "paper"
            values = {**values, "method.preset": advanced.known_preset(values["method.preset"])}
        return [_restored(component, values[key]) if key in values else gr.update() for key, component in form.items()]

    demo.load(restore, saved, components, show_progress="hidden", api_visibility="private")


def _restored(component: gr.components.Component, value: Any) -> Any:
    choices = [
        choice[1] if isinstance(choice, (tuple, list)) else choice
        for choice in getattr(component, "choices", None) or []
    ]
    if choices and value is not None:
        wanted = value if isinstance(value, list) else [value]
        if not all(item in choices for item in wanted):
            return gr.update()
    return value
