"""The HTML run report: everything sparkvision commands left in a folder (data set,
training, evaluations, tuning, streaming) in one self-contained HTML file.

``build_report(path, out)`` writes it; ``find_artefacts(path)`` says what it would show."""

from sparkvision.reporting.artefacts import Artefacts, find_artefacts
from sparkvision.reporting.report import ReportResult, build_report, render_report

__all__ = ["Artefacts", "ReportResult", "build_report", "find_artefacts", "render_report"]
