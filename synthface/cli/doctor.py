"""`synthface doctor`: what this environment can run, and how to fetch what is missing."""

from __future__ import annotations

import typer
from rich.table import Table

from synthface.cli.common import JsonOpt, console, example, handle_errors, write_json


@handle_errors
def doctor(json_out: JsonOpt = None) -> None:
    """Report torch/CUDA, devices, package versions, and which weights are present or missing.

    For each missing weight file it prints the one command that fetches it.
    """
    from synthface.doctor import report

    data = report()
    t = data["torch"]
    console.print(f"[bold]python[/] {data['python']}  [bold]torch[/] {t['torch']}  "
                  f"[bold]CUDA[/] {'yes ' + str(t['cuda_version']) if t['cuda_available'] else 'no'}  "
                  f"[bold]default device[/] {t['default_device']}  [bold]CPU threads[/] {t['cpu_threads']}")
    for d in t["devices"]:
        console.print(f"  cuda:{d['index']} {d['name']} {d['memory_gib']} GiB bf16={d['bf16']}")
    missing = [k for k, v in data["packages"].items() if v == "not installed"]
    if missing:
        console.print(f"[yellow]not installed:[/] {', '.join(missing)}")
    table = Table(title="weights", show_lines=False)
    for col in ("weights", "used for", "status", "size"):
        table.add_column(col, overflow="fold")
    for w in data["weights"]:
        status = "[green]present[/]" if w["present"] else "[red]missing[/]"
        table.add_row(w["name"], w["used_for"], status, w["size"])
    console.print(table)
    missing_weights = [w for w in data["weights"] if not w["present"]]
    if missing_weights:
        console.print("[bold]fetch what is missing[/] (on a machine with network; the caches are then reused offline):")
        for w in missing_weights:
            console.print(f"  {w['name']}:\n    [cyan]{w['fetch']}[/]", highlight=False, soft_wrap=True)
    write_json(json_out, data)


def register(app: typer.Typer) -> None:
    app.command("doctor", epilog=example("synthface doctor --json doctor.json"))(doctor)
