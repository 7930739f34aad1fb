"""The featviz command line: builds the Typer app and turns user errors into one-line messages."""

from __future__ import annotations

import os
import sys

import typer

from featviz.distributed import launched
from featviz.errors import ConfigError, FeatvizError, error_line, one_line, printable

from . import analyze, check, compare, data, export, gallery, import_, render, runs, summary, train

app = typer.Typer(
    name="featviz",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="See what a small CNN learns: filters at every epoch, activation maximization per depth, an HTML gallery.",
)
app.command()(train.train)
app.command()(summary.summary)
app.command()(runs.runs)
app.command()(render.render)
app.command()(gallery.gallery)
app.command()(analyze.analyze)
app.command()(compare.compare)
app.command()(check.check)
app.command()(export.export)
app.command(name="import")(import_.import_run)
app.add_typer(data.app, name="data")


def main(argv: list[str] | None = None) -> int:
    """Entry point. A user mistake prints ``featviz: error: ...`` on one line and returns non-zero."""
    try:
        args = sys.argv[1:] if argv is None else argv
        if launched() and args and args[0] not in ("train", "render"):  # the others write shared files from one process
            raise ConfigError(f"featviz {args[0]} runs in one process; only train and render run under torchrun")
        rv = app(args=argv, prog_name="featviz", standalone_mode=False)
        if rv == 130:  # Ctrl-C: typer turns the KeyboardInterrupt into exit code 130 itself
            raise KeyboardInterrupt
        return rv if isinstance(rv, int) else 0
    except typer.TyperException as e:  # usage errors: bad option values, unknown options, missing args
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
            return 0
        cmd = ctx.command_path if ctx is not None else "featviz"
        typer.echo(f"featviz: error: {error_line(e.format_message())} (see '{printable(cmd)} --help')", err=True)
        return getattr(e, "exit_code", 2)
    except FeatvizError as e:
        typer.echo(f"featviz: error: {error_line(e)}", err=True)
        return 1
    except typer.Abort:
        typer.echo("featviz: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        typer.echo(
            "featviz: interrupted; everything committed is kept (train: continue with --resume RUN; render: "
            "run it again, finished images are reused)",
            err=True,
        )
        return 130
    except Exception as e:  # noqa: BLE001 - not a mistake featviz knows: a damaged or hand-edited run file, or a bug
        if os.environ.get("FEATVIZ_TRACEBACK"):
            raise
        typer.echo(
            f"featviz: error: unexpected {type(e).__name__}: {error_line(one_line(e, 200))} (a damaged or "
            "edited run file, or a bug; `featviz check RUN` looks for damage, FEATVIZ_TRACEBACK=1 shows where "
            "it happened)",
            err=True,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script wrapper: exit with main()'s code."""
    sys.exit(main())
