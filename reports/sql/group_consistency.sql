-- Consistency by group (DESIGN: the share of train groups whose d_g has the concept's sign):
-- per train group, d = mean on its concept examples - mean on its other examples, whether
-- it follows the concept (d > 0), and share = P(a concept example > an other example of the
-- same group), the bar's length. Examples without a group (the loader names each one
-- `auto-<hash>`) are one bar, not one bar per example.
WITH v AS (
    SELECT layer, neuron, v, label,
           CASE WHEN grp IS NULL OR grp LIKE 'auto-%' THEN '(ungrouped examples)' ELSE grp END AS grp
    FROM neuron_values WHERE coalesce(split, 'train') = 'train' AND v IS NOT NULL
), m AS (
    SELECT layer, neuron, grp,
           count(*) FILTER (WHERE label = 1) AS n_pos, count(*) FILTER (WHERE label = 0) AS n_neg,
           avg(v) FILTER (WHERE label = 1) - avg(v) FILTER (WHERE label = 0) AS d
    FROM v GROUP BY ALL
), s AS (
    SELECT p.layer, p.neuron, p.grp,
           avg(CASE WHEN p.v > n.v THEN 1.0 WHEN p.v = n.v THEN 0.5 ELSE 0.0 END) AS share
    FROM v p JOIN v n ON p.layer = n.layer AND p.neuron = n.neuron AND p.grp = n.grp
    WHERE p.label = 1 AND n.label = 0
    GROUP BY ALL
)
SELECT m.layer, m.neuron, m.grp, m.n_pos, m.n_neg, m.d, coalesce(m.d > 0, false) AS follows, s.share
FROM m LEFT JOIN s USING (layer, neuron, grp)
WHERE m.n_pos > 0
ORDER BY m.layer, m.neuron, m.grp;
