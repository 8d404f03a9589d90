#!/usr/bin/env node
// The same handler as a dispatcher worker.
'use strict';

const { serve } = require('../../sdk/node');
serve(require('./handler'));
