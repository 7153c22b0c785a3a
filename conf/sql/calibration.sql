-- Calibration by day and domain: mean predicted score vs observed click rate.
SELECT s.ds, s.domain, COUNT(*) AS n_rows,
       ROUND(AVG(s.score), 6) AS mean_score,
       ROUND(AVG(CAST(f.label AS DOUBLE)), 6) AS click_rate,
       ROUND(AVG(s.score) - AVG(CAST(f.label AS DOUBLE)), 6) AS bias
FROM cdtm.scores s
JOIN cdtm.features f ON s.row_id = f.row_id AND s.ds = f.ds
GROUP BY s.ds, s.domain
ORDER BY s.ds, s.domain
