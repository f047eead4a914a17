"""What people read: Pareto fronts, scorecards, tables and plots."""
