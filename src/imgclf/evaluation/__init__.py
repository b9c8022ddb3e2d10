"""Measuring a model: metrics from one confusion matrix, error analysis, figures, the report."""
