// The PAC helper functions, with the semantics browsers give them (Chromium's where they
// differ). Natives bound by viaduct: dnsResolve, dnsResolveEx, myIpAddress, myIpAddressEx,
// isInNetEx, __viaduct_now (milliseconds since the epoch: the clock, injectable in tests).
"use strict";

function isPlainHostName(host) {
    return String(host).indexOf(".") < 0 && String(host).indexOf(":") < 0;
}

function dnsDomainIs(host, domain) {
    host = String(host);
    domain = String(domain);
    return host.length >= domain.length &&
        host.substring(host.length - domain.length) === domain;
}

function localHostOrDomainIs(host, hostdom) {
    host = String(host);
    hostdom = String(hostdom);
    return host === hostdom || hostdom.lastIndexOf(host + ".", 0) === 0;
}

function dnsDomainLevels(host) {
    return String(host).split(".").length - 1;
}

function isResolvable(host) {
    return dnsResolve(host) !== null;
}

function isResolvableEx(host) {
    return dnsResolveEx(host) !== "";
}

function __v4(text) {
    var parts = String(text).split(".");
    if (parts.length !== 4) return null;
    var n = 0;
    for (var i = 0; i < 4; i++) {
        if (!/^[0-9]{1,3}$/.test(parts[i])) return null;
        var b = parseInt(parts[i], 10);
        if (b > 255) return null;
        n = n * 256 + b;
    }
    return n;
}

function isInNet(host, pattern, mask) {
    var addr = __v4(host);
    if (addr === null) {
        var resolved = dnsResolve(host);
        if (resolved === null) return false;
        addr = __v4(resolved);
        if (addr === null) return false;
    }
    var p = __v4(pattern), m = __v4(mask);
    if (p === null || m === null) return false;
    // Unsigned 32-bit AND through division: JavaScript's & is signed.
    for (var i = 0; i < 4; i++) {
        var shift = Math.pow(256, 3 - i);
        var ab = Math.floor(addr / shift) % 256, pb = Math.floor(p / shift) % 256, mb = Math.floor(m / shift) % 256;
        if ((ab & mb) !== (pb & mb)) return false;
    }
    return true;
}

function shExpMatch(str, shexp) {
    var re = "";
    var s = String(shexp);
    for (var i = 0; i < s.length; i++) {
        var c = s.charAt(i);
        if (c === "*") re += ".*";
        else if (c === "?") re += ".";
        else if ("\\^$.|+()[]{}/".indexOf(c) >= 0) re += "\\" + c;
        else re += c;
    }
    return new RegExp("^" + re + "$").test(String(str));
}

var __DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
var __MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];

function __date(gmt) {
    var d = new Date(__viaduct_now());
    return {
        day: gmt ? d.getUTCDay() : d.getDay(),
        date: gmt ? d.getUTCDate() : d.getDate(),
        month: gmt ? d.getUTCMonth() : d.getMonth(),
        year: gmt ? d.getUTCFullYear() : d.getFullYear(),
        hour: gmt ? d.getUTCHours() : d.getHours(),
        minute: gmt ? d.getUTCMinutes() : d.getMinutes(),
        second: gmt ? d.getUTCSeconds() : d.getSeconds()
    };
}

function __gmtLast(args) {
    var a = Array.prototype.slice.call(args);
    var gmt = a.length > 0 && String(a[a.length - 1]).toUpperCase() === "GMT";
    if (gmt) a.pop();
    return { args: a, gmt: gmt };
}

// Inclusive range test that wraps around (FRI..MON, 22..6, DEC..FEB).
function __within(value, lo, hi) {
    return lo <= hi ? value >= lo && value <= hi : value >= lo || value <= hi;
}

function weekdayRange() {
    var p = __gmtLast(arguments);
    var d1 = __DAYS.indexOf(String(p.args[0]).toUpperCase());
    if (d1 < 0) return false;
    var d2 = p.args.length > 1 ? __DAYS.indexOf(String(p.args[1]).toUpperCase()) : d1;
    if (d2 < 0) return false;
    return __within(__date(p.gmt).day, d1, d2);
}

function dateRange() {
    var p = __gmtLast(arguments);
    var a = p.args, now = __date(p.gmt);
    if (a.length === 0 || a.length > 6) return false;
    // Each argument is a day (1-31), a month name or a year (four digits); the first half of
    // the arguments is the start, the second the end (one or two "points").
    function kind(v) {
        if (typeof v === "string" && __MONTHS.indexOf(v.toUpperCase()) >= 0) return "month";
        var n = Number(v);
        if (n >= 1000) return "year";
        return "day";
    }
    function value(v) {
        return kind(v) === "month" ? __MONTHS.indexOf(String(v).toUpperCase()) : Number(v);
    }
    function key(parts, fields) {
        // A comparable number from the fields present in `parts`, using `fields` order.
        var k = 0;
        for (var i = 0; i < fields.length; i++) {
            var f = fields[i];
            k = k * 10000 + (f in parts ? parts[f] : 0);
        }
        return k;
    }
    var half = a.length === 1 ? 1 : a.length / 2;
    if (a.length !== 1 && a.length % 2 !== 0) return false;
    var start = {}, end = {};
    for (var i = 0; i < half; i++) start[kind(a[i])] = value(a[i]);
    for (var j = half; j < a.length; j++) end[kind(a[j])] = value(a[j]);
    if (a.length === 1) end = start;
    var fields = ["year", "month", "day"].filter(function (f) { return f in start; });
    var cur = { year: now.year, month: now.month, day: now.date };
    var c = key(cur, fields), s = key(start, fields), e = key(end, fields);
    return "year" in start ? c >= s && c <= e : __within(c, s, e);
}

function timeRange() {
    var p = __gmtLast(arguments);
    var a = p.args.map(Number), now = __date(p.gmt);
    var cur, s, e;
    if (a.length === 1) {
        return now.hour === a[0];
    } else if (a.length === 2) {
        cur = now.hour; s = a[0]; e = a[1];
        // "from hour s until hour e": e is exclusive, as in Chromium.
        return s <= e ? cur >= s && cur < e : cur >= s || cur < e;
    } else if (a.length === 4) {
        cur = now.hour * 60 + now.minute; s = a[0] * 60 + a[1]; e = a[2] * 60 + a[3];
    } else if (a.length === 6) {
        cur = now.hour * 3600 + now.minute * 60 + now.second;
        s = a[0] * 3600 + a[1] * 60 + a[2]; e = a[3] * 3600 + a[4] * 60 + a[5];
    } else {
        return false;
    }
    return __within(cur, s, e);
}

function sortIpAddressList(list) {
    return String(list).split(";").filter(function (x) { return x !== ""; }).sort().join(";");
}

function getClientVersion() {
    return "1.0";
}

function alert() {}
