"""What calls cost: the price table, each record's ``cost_usd``, a run's budget and estimate."""
