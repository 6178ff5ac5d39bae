"""``hpo report``: a campaign (or a single study) as one offline HTML page of figures.

- :mod:`hpo.report.collect` reads everything the report shows from storage into plain data;
- :mod:`hpo.report.sections` turns that data into sections of figures, tables and words;
- :mod:`hpo.report.page` writes the sections as one self-contained HTML file.
"""
