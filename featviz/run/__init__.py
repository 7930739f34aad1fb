"""The run folder's one home: everything that knows where a run keeps what and what each file holds.

* ``store``: the ``Run`` class (open, create, snapshots, metrics, renders index, manifest);
* ``records``: what run.json, the manifest and each JSON-lines record may hold (checked when read);
* ``fileio``: atomic writes, bounded reads of regular files, paths confined to a run, safetensors;
* ``outputs``: the folder of runs (where a new run goes, which one ``--force`` may replace);
* ``lock``: one writer per run;
* ``renderset``: the settings sets of activation-maximization images;
* ``check``: ``featviz check``, a run verified against its manifest.
"""
