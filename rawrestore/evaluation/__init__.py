"""The lab's benchmark: a frozen set of synthetic DNGs (:mod:`.bench_set`), the scores (:mod:`.metrics`), the
developers under test (:mod:`.methods`), the tables (:mod:`.report`) and the command (:mod:`.bench`,
``python -m rawrestore.evaluation.bench``). Nothing in the shipped developer imports it."""
