-- Activation histograms of concept vs non-concept train examples, per selected neuron.
WITH v AS (
    SELECT * FROM neuron_values WHERE coalesce(split, 'train') = 'train' AND v IS NOT NULL
), r AS (
    SELECT layer, neuron, min(v) AS lo, max(v) AS hi FROM v GROUP BY ALL
), b AS (
    SELECT v.layer, v.neuron, v.label, r.lo, r.hi,
           least(CAST(floor((v.v - r.lo) / greatest(r.hi - r.lo, 1e-9) * $bins) AS INTEGER), $bins - 1) AS bin
    FROM v JOIN r USING (layer, neuron)
)
SELECT layer, neuron, label, bin,
       any_value(lo) + bin * (any_value(hi) - any_value(lo)) / $bins AS x0,
       any_value(lo) + (bin + 1) * (any_value(hi) - any_value(lo)) / $bins AS x1,
       count(*) AS n,
       count(*) / sum(count(*)) OVER (PARTITION BY layer, neuron, label) AS share
FROM b
GROUP BY layer, neuron, label, bin
ORDER BY layer, neuron, label, bin;
