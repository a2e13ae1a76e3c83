-- The probe examples of one model x concept: the concept's words are the positives' marked spans.
SELECT text, label, span_start, span_end
FROM examples
WHERE model = $model AND concept = $concept
