"""Figures (matplotlib, written as PNG and PDF)."""

from fergi.plots._coverage import plot_accuracy_coverage
from fergi.plots._reaction import plot_activation_by_emotion, plot_activation_by_rating

__all__ = ["plot_accuracy_coverage", "plot_activation_by_emotion", "plot_activation_by_rating"]
