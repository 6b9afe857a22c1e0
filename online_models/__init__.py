"""Online River models for churn and purchase propensity (arriving with the models issue)."""
