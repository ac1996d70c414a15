"""Where a run's results live: the artifact store and its staging areas (``artifacts``), the artifact file names
(``layout``), the DuckDB catalog over every artifact (``catalog``) and the run report (``report``)."""
