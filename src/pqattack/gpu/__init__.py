"""Paper scale on one GPU machine in one shot: the staged run (``run``, ``tools/gpu-run``), its sizes and cost model
(``plan``), what may come back (``outbox``), the check of the prepared ``.gpu/`` folder (``prep``), and, back on the
CPU, the fetched records into the committed tables (``render``, ``tools/gpu-render``)."""
