"""Measuring the written mask: class statistics, object instances, quality against a truth."""
