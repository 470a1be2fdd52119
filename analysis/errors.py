"""The one exception the analysis raises for bad input."""


class AnalysisError(ValueError):
    """Input the analysis cannot turn into a meaningful number. The message names the problem
    (the column, the coefficient, the variant) and, where there is one, the fix."""
