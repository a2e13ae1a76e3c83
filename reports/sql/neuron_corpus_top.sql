-- One neuron's scan rows: top/bottom excerpts with their windows, interval and random samples.
SELECT kind, rank, bin, excerpt_id, position, activation, window_start, tokens, token_acts, word, category
FROM corpus_top
WHERE model = $model AND corpus = $corpus AND layer = $layer AND neuron = $neuron
ORDER BY kind, bin DESC, rank
