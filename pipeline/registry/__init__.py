"""The model registry: the quality gate, the registry entry and model card, versions and stages as gto tags,
and the lineage audit. One file per part; importing the package loads none of them.

- `gate.py`: the quality gate: every `register` threshold against the evaluation reports
- `entry.py`: the `register` stage's work: gate the encoder, write registry/entry.json and the card
- `card.py`: registry/model_card.md, rendered from an entry
- `versions.py`: versions and stages of the encoder as gto git tags; fetching a registered encoder
- `records.py`: read access to the project's records (dvc.lock, reports, entry) at a revision; hashes
- `source.py`: identity (count, bytes, digest) of the source dataset outside the repository
- `lineage.py`: the audit chain version -> commit -> encoder -> metrics -> params -> shards -> source
"""
