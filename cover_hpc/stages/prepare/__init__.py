"""prepare-data: raw book records in, an imagefolder data set with a report out."""
