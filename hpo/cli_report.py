"""`hpo report`: a campaign or study as one offline HTML page (a thin command over hpo.report)."""

from __future__ import annotations

import click

from hpo.cli_inspect import opened
from hpo.output import UsageError, literal, out, storage_option


@click.command()
@click.argument("name")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, writable=True), help="The HTML file to write. Default: NAME-report.html in the working folder.")
@storage_option
def report(name, output, storage_url) -> None:
    """Write a campaign (or a single study) as one self-contained HTML page of figures.

    The page needs no network: Plotly's script, the styles and every figure's data are inside
    it. Sections: summary, coarse to fine (accuracy against learning rate per stage, with the
    searched and narrowed ranges), choices, history, importance, learning curves, layers
    (activation histograms, dead units, saturation, update/weight ratios), workers, and the
    lecture's initialization experiment on the campaign's own data. A campaign still running
    gets a report of what exists so far. Prints the path written.

    \b
    Examples:
      hpo report c1
      hpo report c1 -o reports/c1.html --storage postgresql://hpo@db/hpo
      hpo report c1/stage-2
    """
    from hpo.report import ReportPathError, target_path, write_report

    try:
        target = target_path(name, output)
    except ReportPathError as e:
        raise UsageError(str(e)) from None
    with opened(storage_url) as storage:
        try:
            path = write_report(storage, storage_url, name, target)
        except OSError as e:  # disk full, permissions changed meanwhile: the old file is left as it was
            raise UsageError(f"cannot write the report to {target}: {e.strerror or e}") from None
    out.print(literal(str(path)))


COMMANDS = (report,)
