-- One neuron's corpus statistics and histograms.
SELECT n_tokens, n_excerpts, mean, std, frac_active, hist_lo, hist_width, hist, hist_max, quantiles, gate_up_signs
FROM neuron_stats
WHERE model = $model AND corpus = $corpus AND layer = $layer AND neuron = $neuron
