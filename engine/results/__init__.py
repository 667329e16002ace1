"""Where measured results live and what is made of them: the SQLite store, sweeps and the Pareto frontier."""
