"""The run folder's one home: everything that knows where a run keeps what and what each file holds.

* ``schema``: what a run holds, as types (``RunInfo``, ``DataInfo``, ``ConvLayer``, ``SnapshotPoint``,
  ``RenderRecord``), each with ``to_json``/``from_json``: start here to learn what is in a run;
* ``store``: the ``Run`` class, where each thing lives (open, create, snapshots, metrics, manifest);
* ``artifacts``: the part of ``Run`` that reads and writes renders, analysis and gallery files;
* ``records``: the one builder of run.json, and checks of the manifest and metrics records;
* ``fileio``: atomic writes, bounded reads of regular files, paths confined to a run, safetensors;
* ``outputs``: the folder of runs (where a new run goes, which one ``--force`` may replace);
* ``lock``: one writer per run;
* ``renderset``: the settings sets of activation-maximization images;
* ``check``: ``featviz check``, a run verified against its manifest.
"""
