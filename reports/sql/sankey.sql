-- Concept -> layer -> concept family, counted over the significant neurons of one model.
SELECT s.concept, s.layer, coalesce(l.family, 'unlabelled') AS family, count(*) AS n
FROM scores s
LEFT JOIN labels l ON l.model = s.model AND l.layer = s.layer AND l.neuron = s.neuron
WHERE s.model = $model AND s.q_value < $alpha
GROUP BY ALL
ORDER BY s.concept, s.layer, family;
