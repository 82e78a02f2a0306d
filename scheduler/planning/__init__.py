"""Fleet planning: joint placement of a batch of jobs over (offer, start hour) under capacity,
quotas and budget (issue 13). ``capacity`` holds the one shape every capacity source gives."""
