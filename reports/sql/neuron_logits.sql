-- The output tokens a neuron boosts (rank > 0) and suppresses (rank < 0), from the weights.
SELECT rank, token, effect FROM logit_effects
WHERE model = $model AND layer = $layer AND neuron = $neuron
ORDER BY rank > 0 DESC, abs(rank)
