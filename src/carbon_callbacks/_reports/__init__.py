"""What a finished run becomes: report cards, projections, what-ifs, plots and pandas frames."""
