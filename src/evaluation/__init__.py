"""Oracle-based evaluation on the simulated bank: how far models and policies are from the truth.

The only production-side package allowed to read ``data/truth`` and to import the simulator
(``src.data.synthetic``): ``propensity`` (true window probabilities and the Bayes-at-as_of
ceiling next to a trained propensity run), ``cvr`` (true conversion probabilities next to a CVR
run) and ``policies`` (random, A/B-then-fix, bandit and oracle policies simulated on the same
traffic; off-policy estimates checked against the true values). Training, serving and features
never import it (import-linter contracts in ``pyproject.toml``); the demo and the notebooks
call it after training, when the bank has a truth directory.
"""
