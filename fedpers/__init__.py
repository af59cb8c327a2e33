"""fedpers: personalised, heterogeneity-aware federated learning on Flower.

Importing the package is cheap; torch, Flower and MLflow load in the modules
that need them.
"""

__version__ = "0.1.0"
